"""The nested atlas benchmark chooses each target's setting without looking at that target."""

from __future__ import annotations

import statistics

from benchmarks import bench_atlas_nested as nested
from benchmarks.bench_atlas import IDS


class ScriptedWarps:
    """Scores by rule instead of registrations, recording every (target, templates) asked."""

    def __init__(self, dice_of, purity_of=lambda target, fusion: 1.0):
        self.dice_of, self.purity_of = dice_of, purity_of
        self.asked: list[tuple[str, tuple[str, ...]]] = []
        self.agreement: dict = {}

    def score(self, target, templates, fusion):
        self.asked.append((target, templates))
        self.agreement[(target, templates)] = 0.8
        return self.dice_of(target, fusion), self.purity_of(target, fusion)


def first_of_pool(pool, n):
    return tuple(sorted(pool, key=int)[:n])


def test_a_setting_better_only_on_the_held_out_target_is_not_chosen_for_it(monkeypatch):
    monkeypatch.setattr(nested, "_shape_templates", first_of_pool)
    # jlf equals majority everywhere but on target 19, where it is far better: with 19 among the
    # scored targets the medians tie and jlf's mean wins; without it the two tie throughout
    # and the first candidate, majority, stays
    warps = ScriptedWarps(
        lambda t, f: {"jlf": 1.0 if t == "19" else 0.82, "majority": 0.82}.get(f, 0.5)
    )
    figures = nested.nested([warps], [{}])
    assert figures["per_target"]["19"]["chosen"] == "{} paper/majority"
    assert figures["per_target"]["19"]["dice"] == 0.82  # not jlf's 1.0 on 19
    for target, row in figures["per_target"].items():
        if target != "19":
            assert row["chosen"] == "{} paper/jlf", target  # 19 is among their nine
    assert figures["in_sample_best"] == "{} paper/jlf"  # the optimistic way takes it
    assert figures["nested_dice_median"] == 0.82
    table = figures["in_sample_table"]["{} paper/jlf"]
    assert table["dice_mean"] == round(statistics.mean([0.82] * 9 + [1.0]), 4)


def test_the_held_out_target_is_neither_scored_nor_a_template_while_choosing(monkeypatch):
    monkeypatch.setattr(nested, "_shape_templates", first_of_pool)
    warps = ScriptedWarps(lambda t, f: 0.8)
    for held_out in IDS:
        warps.asked.clear()
        nested.choose([warps], [u for u in IDS if u != held_out], frozenset({held_out}))
        assert warps.asked
        assert all(t != held_out and held_out not in tpl for t, tpl in warps.asked)
        assert all(t not in tpl for t, tpl in warps.asked)  # nor a target its own template


def test_a_setting_below_the_purity_floor_loses_to_a_pure_one(monkeypatch):
    monkeypatch.setattr(nested, "_shape_templates", first_of_pool)
    warps = ScriptedWarps(
        lambda t, f: {"intersection": 0.70, "majority": 0.90}.get(f, 0.5),
        lambda t, f: 0.99 if f == "intersection" else nested.PURITY_FLOOR - 0.01,
    )
    chosen = nested.choose([warps], list(IDS[1:]), frozenset({IDS[0]}))
    assert chosen[2] == "intersection"  # the only one pure enough, despite its lower Dice
