"""Exceptions for problems the user can fix; the CLI prints them as one line, never a traceback."""


class LiverfatError(Exception):
    """A problem with the user's input or configuration (bad file, bad value, missing data)."""


class ImageError(LiverfatError):
    """An image that cannot be read, is empty, or does not match its companions."""


class GeometryError(ImageError):
    """Two images that should share a voxel grid do not."""


class ManifestError(LiverfatError):
    """A manifest (dataset card + subject table) that is malformed or inconsistent."""
