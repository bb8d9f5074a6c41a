"""Where reward weights live. Pure path logic (no torch), so a missing weight is
reported before any heavy import.

Nothing is ever downloaded: weights come from a local path or the local Hugging
Face cache. Environment variables override the defaults.
"""

from __future__ import annotations

import os
from pathlib import Path

from bench.errors import BenchError

CLIP_L14 = "openai/clip-vit-large-patch14"
LAION_HEAD_FILE = "sac+logos+ava1-l14-linearMSE.pth"
PICKSCORE_MODEL = "yuvalkirstain/PickScore_v1"
PICKSCORE_PROCESSOR = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"
CLIP_BPE_FILE = "bpe_simple_vocab_16e6.txt.gz"
CLIP_BPE_WHEEL = "open_clip_torch==3.3.0"


def weights_dir() -> Path:
    return Path(os.environ.get("BENCH_WEIGHTS", Path.home() / ".cache" / "bench" / "weights"))


def env_file(var: str) -> Path | None:
    """The file an environment variable names (None when unset), or a one-line error when it is no file."""
    env = os.environ.get(var)
    if not env:
        return None
    p = Path(env).expanduser()
    if not p.is_file():
        raise BenchError(f"{var}={env}: no such file")
    return p


def bpe_path() -> Path:
    """CLIP's BPE merges (for the native CLIP tokenizer): BENCH_CLIP_BPE, then the bench cache."""
    named = env_file("BENCH_CLIP_BPE")
    if named is not None:
        return named
    from bench.spec.cache import cache_root

    for root in (cache_root(), Path.home() / ".cache" / "bench"):
        if (root / CLIP_BPE_FILE).is_file():
            return root / CLIP_BPE_FILE
    raise BenchError(f"CLIP's BPE merges ({CLIP_BPE_FILE}) not found: run scripts/setup.sh (it takes the file from "
                     f"the {CLIP_BPE_WHEEL} wheel without installing it) or set BENCH_CLIP_BPE=/path/to/{CLIP_BPE_FILE}")


def check_checkpoint_file(path: Path, what: str) -> None:
    """An official .pt is a torch zip archive holding data.pkl: anything else is refused by its format, before
    torch reads it (a text file, a truncated download)."""
    import zipfile

    path = Path(path)
    if not path.is_file():
        raise BenchError(f"{what} checkpoint {path} is not a regular file")
    try:
        with zipfile.ZipFile(path) as z:
            ok = any(n.endswith("/data.pkl") or n == "data.pkl" for n in z.namelist())
    except (zipfile.BadZipFile, OSError):
        ok = False
    if not ok:
        raise BenchError(f"{path} is not an {what} checkpoint (not a torch checkpoint archive)")


def resolve_hf_folder(location: str, what: str, env: str) -> Path:
    """A local folder, or the cached snapshot of a Hugging Face model id."""
    from bench.spec.runspec import find_in_hf_cache, hf_cache_dir

    path = Path(location).expanduser()
    if path.is_dir():
        return path
    if location.count("/") == 1 and not location.startswith((".", "/", "~")):
        cached = find_in_hf_cache(location, marker="config.json")
        if cached is not None:
            return cached
        raise BenchError(
            f"{what} {location!r} is not available offline: not in the Hugging Face cache {hf_cache_dir()}; "
            f"copy a downloaded snapshot there or set {env}=/path/to/folder"
        )
    raise BenchError(f"{what} folder not found: {location} (set {env}=/path/to/folder)")


def aesthetic_paths(suite: str) -> tuple[Path, Path]:
    """(CLIP folder, head weight file) of the aesthetic reward for the real SD suite."""
    clip = resolve_hf_folder(os.environ.get("BENCH_AESTHETIC_CLIP", CLIP_L14), "aesthetic CLIP model",
                             "BENCH_AESTHETIC_CLIP")
    head = Path(os.environ.get("BENCH_AESTHETIC_HEAD", weights_dir() / LAION_HEAD_FILE)).expanduser()
    if not head.is_file():
        raise BenchError(
            f"aesthetic head weights not found at {head}: place LAION's {LAION_HEAD_FILE} "
            f"(improved-aesthetic-predictor) there or set BENCH_AESTHETIC_HEAD=/path/to/file"
        )
    return clip, head


HPSV2_FILES = {"v2.0": "HPS_v2_compressed.pt", "v2.1": "HPS_v2.1_compressed.pt"}
HPSV2_ENV = {"v2.0": "BENCH_HPSV2", "v2.1": "BENCH_HPSV2_1"}


def hpsv2_checkpoint(version: str) -> Path:
    """Where the HPSv2 checkpoint of `version` is: its env variable, ~/.cache/bench/weights, or the xswu/HPSv2
    snapshot in the Hugging Face cache (a one-line error when absent)."""
    from bench.spec.runspec import hf_cache_dir

    named = env_file(HPSV2_ENV[version])
    if named is not None:
        return named
    local = weights_dir() / HPSV2_FILES[version]
    if local.is_file():
        return local
    snaps = sorted((hf_cache_dir() / "models--xswu--HPSv2" / "snapshots").glob(f"*/{HPSV2_FILES[version]}"))
    if snaps:
        return snaps[-1]
    raise BenchError(f"HPSv2 {version} weights not found: place {HPSV2_FILES[version]} (xswu/HPSv2) in "
                     f"{weights_dir()}, the Hugging Face cache, or set {HPSV2_ENV[version]}=/path/to/file")


def imagereward_checkpoint() -> Path:
    from bench.spec.runspec import hf_cache_dir

    named = env_file("BENCH_IMAGEREWARD")
    if named is not None:
        return named
    if (weights_dir() / "ImageReward.pt").is_file():
        return weights_dir() / "ImageReward.pt"
    snaps = sorted((hf_cache_dir() / "models--THUDM--ImageReward" / "snapshots").glob("*/ImageReward.pt"))
    if snaps:
        return snaps[-1]
    raise BenchError(f"ImageReward weights not found: place ImageReward.pt (THUDM/ImageReward) in {weights_dir()}, "
                     f"the Hugging Face cache, or set BENCH_IMAGEREWARD=/path/to/ImageReward.pt")


def bert_tokenizer_folder() -> Path:
    return resolve_hf_folder(os.environ.get("BENCH_BERT_TOKENIZER", "bert-base-uncased"),
                             "ImageReward's BERT tokenizer", "BENCH_BERT_TOKENIZER")


def pickscore_paths() -> tuple[Path, Path]:
    """(model folder, processor folder) of PickScore on the real SD suite."""
    return (resolve_hf_folder(os.environ.get("BENCH_PICKSCORE", PICKSCORE_MODEL), "PickScore model",
                              "BENCH_PICKSCORE"),
            resolve_hf_folder(os.environ.get("BENCH_PICKSCORE_PROCESSOR", PICKSCORE_PROCESSOR),
                              "PickScore tokenizer", "BENCH_PICKSCORE_PROCESSOR"))


def aesthetic_files() -> list[Path]:
    return list(aesthetic_paths("sd"))


def hpsv2_files(version: str = "v2.0") -> list[Path]:
    path = hpsv2_checkpoint(version)
    check_checkpoint_file(path, "HPSv2")
    bpe_path()  # its native tokenizer's merges, checked now (they are not part of the weights' digest)
    return [path]


def hpsv2_1_files() -> list[Path]:
    return hpsv2_files("v2.1")


def imagereward_files() -> list[Path]:
    path = imagereward_checkpoint()
    check_checkpoint_file(path, "ImageReward")
    return [path, bert_tokenizer_folder()]


def pickscore_files() -> list[Path]:
    return list(pickscore_paths())


def weight_paths(reward: str, suite: str) -> list[Path]:
    """The files and folders a reward's weights come from on the real SD suite (for the run's input digest),
    each checked, as its catalog entry declares them: `sd_weights`, a "module:function" returning them. None
    for rewards without weights, and on the toy suite (its weights live with the suite's assets)."""
    from bench.spec.catalog import rewards
    from bench.spec.registry import load_target

    target = rewards.get(reward).meta.get("sd_weights")
    if suite != "sd" or not target:
        return []
    try:
        locate = load_target(target)
    except (ImportError, AttributeError) as e:  # a plugin's declaration is input too
        raise BenchError(f"reward {reward!r}: its sd_weights {target!r} cannot be loaded ({e})") from None
    paths = locate()
    if not isinstance(paths, (list, tuple)) or not all(isinstance(p, (str, Path)) for p in paths):
        raise BenchError(f"reward {reward!r}: its sd_weights {target!r} must return a list of paths")
    return [Path(p) for p in paths]


def preflight(reward: str, suite: str) -> list[Path]:
    """Raise a one-line BenchError now if the reward's weights cannot be found: the suites it applies to, its
    declared `sd_weights` on the real SD suite, the toy pipeline and its declared `toy_assets` folder on the toy
    suite. A plugin reward declares the same fields. Returns `weight_paths` (located once, for the digest)."""
    from bench.spec.catalog import rewards

    meta = rewards.get(reward).meta
    suites = meta.get("suites")
    if suites is not None and suite not in suites:
        raise BenchError(f"reward {reward!r} is not available on suite {suite!r} (it is on: {', '.join(suites)})")
    paths = weight_paths(reward, suite)
    if suite == "toy":
        from bench.spec.toy_assets import REBUILD, assets_root

        if not (assets_root() / "pipeline" / "model_index.json").is_file():
            raise BenchError(f"toy-suite pipeline missing: {assets_root() / 'pipeline'} ({REBUILD})")
        folder = meta.get("toy_assets")
        if folder and not (assets_root() / folder).is_dir():
            raise BenchError(f"toy-suite weights for {reward!r} missing: {assets_root() / folder} ({REBUILD})")
    return paths
