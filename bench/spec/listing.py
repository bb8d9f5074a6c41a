"""`bench list`: registered names (instant, no torch), and the scale rule's effective quantities."""

from __future__ import annotations

from bench.errors import BenchError

KINDS = ("methods", "rewards", "prompts", "backbones", "studies")


def cmd_list(kind: str | None, effective: bool = False) -> int:
    from bench.spec import catalog

    if effective:
        if kind not in (None, "methods"):
            raise BenchError("--effective lists methods: use `bench list methods --effective`")
        print_effective()
        return 0
    registries = {"methods": catalog.methods, "rewards": catalog.rewards,
                  "prompts": catalog.prompt_sets, "backbones": catalog.backbones, "studies": catalog.studies}
    for k in [kind] if kind else KINDS:
        print(f"{k}:")
        width = max(len(e.name) for e in registries[k].entries()) + 2
        for e in registries[k].entries():
            extra = ""
            if k == "rewards":
                extra = f"  [{'higher' if e.meta['higher_is_better'] else 'lower'} is better" \
                        f"{', differentiable' if e.meta['differentiable'] else ''}" \
                        f"{', evaluation only' if e.meta.get('eval_only') else ''}" \
                        f"{'; suites: ' + ','.join(e.meta['suites']) if e.meta.get('suites') else ''}]"
                if e.meta.get("scale"):
                    extra += f"\n  {'':<{width}}scale: {e.meta['scale']}"
            print(f"  {e.name:<{width}}{e.summary}{extra}")
    return 0


def effective_table(backbone: str, rule: str | None = None) -> tuple[str, list[tuple]]:
    """The scale rule's effective quantities of every method at a backbone's defaults (under `rule`, default the
    backbone's)."""
    from types import SimpleNamespace

    from bench.spec import catalog
    from bench.spec.prompts import resolve_prompt_set
    from bench.spec.runspec import scale_rule_of
    from bench.spec.scale import Scale, effective_table_rows

    d = catalog.backbones.get(backbone).meta["defaults"]
    rule, m, tau = scale_rule_of(SimpleNamespace(scale_rule=rule, noise_temperature=None, update_multiplier=None), d)
    scale = Scale(num_steps=d["num_steps"], samples_per_epoch=d["samples_per_epoch"], latent_dims=d["latent_dims"],
                  budget=d["budget"], multiplier=m, rule=rule, temperature=tau, reset_rule=d.get("reset_rule", "updates"))
    return effective_table_rows(scale, len(resolve_prompt_set(d["train_prompts"])[1]), backbone)


def default_rule(backbone: str) -> str:
    from bench.spec import catalog

    return catalog.backbones.get(backbone).meta["defaults"].get("scale_rule", "count")


def print_effective() -> None:
    from bench.text import print_table
    from bench.spec.scale import EFFECTIVE_HEADER

    for bb, rule in (("toy", None), ("toy", "sde" if default_rule("toy") == "count" else "count"), ("sd-v1-4", None)):
        title, rows = effective_table(bb, rule)
        print(title)
        print_table(rows, header=EFFECTIVE_HEADER)
        print()
    print("updates/query: optimizer updates per reward query over the run (the schedule the methods follow); "
          "x source: that as a multiple of the method's source setting; not m because: a floor (an update cannot "
          "be smaller than one sample-step, chain or pair) or a ceiling (nor hold more than one epoch's samples). "
          "Fractional sizes alternate whole ones in a seeded order. Rule: bench/spec/scale.py.")
