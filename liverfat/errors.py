"""Exceptions for problems the user can fix; the CLI prints them as one line, never a traceback."""


class LiverfatError(Exception):
    """A problem with the user's input or configuration (bad file, bad value, missing data)."""


class ImageError(LiverfatError):
    """An image that cannot be read, is empty, or does not match its companions."""


class GeometryError(ImageError):
    """Two images that should share a voxel grid do not."""


class ManifestError(LiverfatError):
    """A manifest (dataset card + subject table) that is malformed or inconsistent."""


def one_line(message: object, *, limit: int | None = None) -> str:
    """Collapse any message (an exception, a multi-line string) to one line.

    An exception with no text is named by its type; ``limit`` cuts the line to that many
    characters (for messages that quote a native library's error).
    """
    text = " ".join(str(message).split()) or type(message).__name__
    return text if limit is None else text[:limit]


def subject_message(subject_id: str, message: object) -> str:
    """One line naming the subject: ``subject S: ...`` unless the message already names it."""
    text = one_line(message)
    return text if str(subject_id) in text else f"subject {subject_id}: {text}"
