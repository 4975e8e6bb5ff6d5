"""A learning-rate sweep read back: each run's peak rate is chosen on the validation split, and the numbers reported
for it come from the test split, which took no part in the choice (a loss that chose its own rate is optimistic,
more so for the run that happened to gain most from the sweep's noise).
"""
from __future__ import annotations

from typing import Dict, List, Optional, Tuple


def choose_rate(by_rate: Dict[float, dict]) -> Tuple[Optional[float], List[dict]]:
    """The rate whose runs have the lowest mean final validation loss over seeds (None while no rate has one), and
    one row per rate: its validation and test loss means and how many seeds finished.

    by_rate: {peak rate: the run's comparison entry at that rate (final_val_loss_mean, final_test_loss_mean, ...)}.
    """
    rows = [{"lr": lr, "val_loss_mean": entry["final_val_loss_mean"], "val_loss_sd": entry["final_val_loss_sd"],
             "test_loss_mean": entry["final_test_loss_mean"], "test_loss_sd": entry["final_test_loss_sd"],
             "seeds_finished": entry["seeds_finished"]} for lr, entry in sorted(by_rate.items())]
    scored = [row for row in rows if row["val_loss_mean"] is not None]
    best = min(scored, key=lambda row: row["val_loss_mean"])["lr"] if scored else None
    for row in rows:
        row["chosen"] = row["lr"] == best
    return best, rows
