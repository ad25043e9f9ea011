"""The progress bar of the library's inner loops (attacks, purification, reclassification), written once."""

from __future__ import annotations

from tqdm.auto import tqdm


def transient_bar(total: int, desc: str, progress: bool, unit: str = "step") -> tqdm:
    """A tqdm bar over ``total`` ``unit``s, refreshed at most twice a second and removed when it closes
    (``leave=False``): these loops usually run inside a demo's own bar. ``progress=False`` hides it."""
    return tqdm(total=total, desc=desc, unit=unit, disable=not progress, mininterval=0.5, leave=False)
