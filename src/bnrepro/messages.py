"""How an underlying error is named inside bnrepro's one-line messages."""


def first_line(error: BaseException) -> str:
    """The first line of the error's message, or its type name when it has none (e.g. an empty EOFError)."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def cause(error: BaseException) -> str:
    """'TypeName: first line', the form bnrepro's messages and failure tags quote an error in."""
    return f"{type(error).__name__}: {first_line(error)}"
