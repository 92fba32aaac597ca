"""The task table. VA, EXPR and AU differ only in the rows of this table, never in copied code.

Everything task-specific (annotation folder, header, invalid marker, number of outputs, the kind of
head/loss/metric) is looked up here by task name.
"""

from __future__ import annotations

from dataclasses import dataclass

EXPRESSIONS = ("Neutral", "Anger", "Disgust", "Fear", "Happiness", "Sadness", "Surprise", "Other")
ACTION_UNITS = ("AU1", "AU2", "AU4", "AU6", "AU7", "AU10", "AU12", "AU15", "AU23", "AU24", "AU25", "AU26")


@dataclass(frozen=True)
class TaskSpec:
    name: str  # "va" | "expr" | "au"
    challenge_dir: str  # folder name inside the Aff-Wild2 annotation root
    columns: tuple[str, ...]  # header of the annotation .txt files (and of submission CSVs, after image_location)
    num_outputs: int  # size of the model head
    invalid: float  # marker for an invalid label in the annotation files
    kind: str  # "regression" (VA, loss 1-CCC) | "multiclass" (EXPR, CE) | "multilabel" (AU, BCE)

    @property
    def label_width(self) -> int:
        """Number of values per line in the annotation file (EXPR stores one class index)."""
        return 1 if self.kind == "multiclass" else self.num_outputs


TASKS: dict[str, TaskSpec] = {
    "va": TaskSpec("va", "VA_Estimation_Challenge", ("valence", "arousal"), 2, -5.0, "regression"),
    "expr": TaskSpec("expr", "EXPR_Recognition_Challenge", EXPRESSIONS, 8, -1.0, "multiclass"),
    "au": TaskSpec("au", "AU_Detection_Challenge", ACTION_UNITS, 12, -1.0, "multilabel"),
}

SPLITS = {"train": "Train_Set", "val": "Validation_Set"}


def get_task(name: str) -> TaskSpec:
    try:
        return TASKS[name.lower()]
    except KeyError:
        from affectmae.errors import AffectMAEError

        raise AffectMAEError(f"unknown task {name!r}; choose one of {', '.join(TASKS)}") from None
