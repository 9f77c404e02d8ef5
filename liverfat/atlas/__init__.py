"""liverfat.atlas: multi-atlas registration, fused eroded median fat readout, calibration.

See :class:`liverfat.atlas.engine.AtlasEngine`.
"""

from liverfat.atlas.engine import AtlasEngine

__all__ = ["AtlasEngine"]
