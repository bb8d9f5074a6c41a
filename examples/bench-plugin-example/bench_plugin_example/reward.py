"""A reward with no weights: the mean brightness of the image."""

from metrics.base import Reward


class Brightness(Reward):
    name = "brightness"
    differentiable = True

    def __init__(self, **_):
        pass

    def score(self, images, prompts):
        return images.detach().float().mean(dim=(1, 2, 3)).cpu()

    def score_differentiable(self, images, prompts):
        return images.mean(dim=(1, 2, 3))
