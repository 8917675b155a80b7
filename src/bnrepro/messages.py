"""Pieces of bnrepro's one-line messages: how an underlying error is named, how a duration reads."""


def first_line(error: BaseException) -> str:
    """The first line of the error's message, or its type name when it has none (e.g. an empty EOFError)."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def cause(error: BaseException) -> str:
    """'TypeName: first line', the form bnrepro's messages and failure tags quote an error in."""
    return f"{type(error).__name__}: {first_line(error)}"


def duration(seconds: float) -> str:
    """'45s', '3m05s', '2h10m'."""
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
