"""``ban``: born-again networks, generations of one architecture, each taught by the last.

Furlanello, Lipton, Tschannen, Itti & Anandkumar, "Born-Again Neural Networks", ICML 2018.
Generation 1 is trained on the labels alone (``scheme.first_losses``, default CE).
Generation ``k > 1`` is the same architecture, freshly initialised, distilled from
generation ``k - 1``'s final weights (a frozen teacher) with the run's ``losses`` (the
paper's BAN uses the teacher's outputs; add CE to mix in the labels). The born-again
ensemble (BANE) averages the probabilities of every generation. Every generation's run
directory is kept (``NAME/gen-1``, ``NAME/gen-2``, ...) and an interrupted sequence resumes.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

from kdforge.config import LossConfig, RunConfig
from kdforge.schemes.base import (
    Runner,
    Scheme,
    SchemeOptions,
    derive,
    evaluate_runs,
    record_of,
    register,
    require,
)


class BornAgainOptions(SchemeOptions):
    generations: int = Field(3, ge=2, description="generations in all, the first included")
    first_losses: list[LossConfig] = Field(default_factory=lambda: [LossConfig(name="ce")],
                                           description="losses of generation 1 (no teacher)")


@register("ban", paper="Furlanello et al. 2018, Born-Again Neural Networks (ICML)")
class BornAgain(Scheme):
    """Born-again generations of one architecture, each distilled from the previous one."""

    Options = BornAgainOptions
    sequence = True

    def check(self, cfg: RunConfig) -> None:
        require(cfg.teacher is None, "ban trains its own first generation; remove the "
                                     "'teacher' section")
        require(any(loss.name != "ce" for loss in cfg.losses),
                "ban's later generations learn from their teacher: give 'losses' a "
                "distillation term, e.g. {name: kd, T: 1}")

    def run(self, cfg: RunConfig, runner: Runner) -> list[dict[str, Any]]:
        self.check(cfg)
        first = [loss.model_dump(mode="json", exclude_none=True)
                 for loss in self.options.first_losses]
        records, dirs = [], []
        for g in range(1, self.options.generations + 1):
            changes: dict[str, Any] = {"losses": first} if g == 1 else {
                "teacher": {"run": str(dirs[-1])}}
            result = runner.stage(derive(cfg, f"gen-{g}", **changes))
            dirs.append(result.run_dir)
            records.append(record_of(result, cfg.student.name, cfg.student.options,
                                     variant=f"gen-{g}", generation=g))
        data = runner.data(cfg)
        test = evaluate_runs(dirs, data.test, num_classes=data.num_classes,
                             device=cfg.train.device)
        records.append({"variant": "ensemble", "student": cfg.student.name,
                        "student_options": cfg.student.options,
                        "test_accuracy": 100.0 * test["accuracy"], "agreement": None,
                        "train_seconds": sum(r["train_seconds"] for r in records),
                        "generation": None, "run_dir": str(runner.root)})
        return records


__all__ = ["BornAgain"]
