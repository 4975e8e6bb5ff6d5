"""A learning-rate sweep read back: each run's peak rate is chosen on the validation split, and the numbers reported
for it come from the test split, which took no part in the choice (a loss that chose its own rate is optimistic,
more so for the run that happened to gain most from the sweep's noise).

Only finished runs take part, compared on the same seeds: a sweep read while it trains, or resumed across sessions,
has rates with more seeds done than others, and a run stopped half-way has a loss no finished run can be held to.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Tuple

from est_megatron.analysis.curves import mean_and_spread


def _finished_losses(entry: dict, key: str) -> Dict[int, float]:
    return {s["seed"]: s[key] for s in entry["seeds"] if s.get("status") == "finished" and s.get(key) is not None}


def choose_rate(by_rate: Dict[float, dict]) -> Tuple[Optional[float], List[dict]]:
    """The rate with the lowest mean final validation loss of its finished runs, over the seeds finished at every
    rate that has one (over each rate's own finished seeds when they share none); None while no run finished.
    One row per rate: validation and test loss mean ± sd of its finished seeds, how many, and whether chosen.

    by_rate: {peak rate: the run's comparison entry at that rate (its "seeds" reports)}.
    """
    val = {lr: _finished_losses(entry, "final_val_loss") for lr, entry in sorted(by_rate.items())}
    rows = []
    for lr, entry in sorted(by_rate.items()):
        val_mean, val_sd = mean_and_spread(list(val[lr].values()))
        test_mean, test_sd = mean_and_spread(list(_finished_losses(entry, "final_test_loss").values()))
        rows.append({"lr": lr, "val_loss_mean": val_mean, "val_loss_sd": val_sd, "test_loss_mean": test_mean,
                     "test_loss_sd": test_sd, "seeds_finished": len(val[lr])})
    candidates = {lr: losses for lr, losses in val.items() if losses}
    common = set.intersection(*map(set, candidates.values())) if candidates else set()

    def score(lr: float) -> float:
        seeds = common or candidates[lr].keys()
        return sum(candidates[lr][s] for s in seeds) / len(seeds)

    best = min(candidates, key=score) if candidates else None
    for row in rows:
        row["chosen"] = row["lr"] == best
        row["chosen_on_seeds"] = sorted(common) if row["chosen"] and common else None
    return best, rows
