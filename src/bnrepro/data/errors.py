"""The one exception a data module raises for data it cannot use."""


class DatasetError(RuntimeError):
    """Missing, empty or malformed dataset; the message names what was expected and the fix."""


def require_batch_fits(batch_size: int, examples: int, world_size: int) -> None:
    """One line naming data.batch_size when one training batch per rank needs more examples than the split has."""
    per_rank = examples // world_size
    if batch_size > per_rank:
        raise DatasetError(
            f"data.batch_size={batch_size} is larger than the training split's {per_rank} examples "
            f"per rank ({world_size} rank(s)): use data.batch_size <= {per_rank}"
        )
