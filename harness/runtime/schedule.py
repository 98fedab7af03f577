"""When periodic work happens: one step convention and one `itstime` for all of it.

A step is named by how many updates came before it, counting from 0: the metrics of
step `s` are measured on the state after `s` updates, and checkpoint `s` holds that
state (a resume starts at step `s`). So after the update of step `s`, the state is
`s + 1`: a save or a hard-example gather asks `itstime(s + 1, every, last=total)`, and
logging asks `itstime(s, every, last=total - 1, first=True)` (the seed's `Step 0, 10,
20, ...`, plus the last step). Every host evaluates the same numbers, so every host
reaches the same answer and makes the same collectives (big_vision's `utils.itstime`).
"""

from __future__ import annotations


def itstime(step: int, every: int, *, last: int | None = None, first: bool = False) -> bool:
    """`step` is a positive multiple of `every`, or is `last`, or is 0 and `first` asks
    for the start."""
    return (step > 0 and step % every == 0) or step == last or (first and step == 0)
