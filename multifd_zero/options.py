"""Migration parameters and capabilities that change zero-page handling."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from ._checks import check_bool

__all__ = ["MigrationOptions", "ZeroPageDetection"]


class ZeroPageDetection(str, enum.Enum):
    """QEMU's ``zero-page-detection`` migration parameter (QAPI ``ZeroPageDetection``).

    Attributes
    ----------
    NONE
        No zero check: every page is sent as a normal page.
    LEGACY
        The check runs on the main migration thread (QEMU's ``save_zero_page``);
        zero pages go over the main channel and only normal pages reach multifd.
    MULTIFD
        The check runs in the multifd sender channels
        (``multifd_send_zero_page_detect``). QEMU's default since 9.0.
    """

    NONE = "none"
    LEGACY = "legacy"
    MULTIFD = "multifd"

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class MigrationOptions:
    """The settings that decide how zero pages are detected, written and released.

    Parameters
    ----------
    zero_page_detection : ZeroPageDetection or str, default "multifd"
        The ``zero-page-detection`` parameter; the enum or its string value.
    postcopy_ram : bool, default False
        The ``postcopy-ram`` capability. On the destination it makes every
        arriving zero page be written (QEMU 10.1), so no page is marked received
        without being populated.
    release_ram : bool, default False
        The ``release-ram`` capability. The source discards zero pages it has
        sent, but only while in postcopy (QEMU's ``ram_release_page``).

    Raises
    ------
    TypeError
        A flag is not a bool, or the detection is neither the enum nor a str.
    ValueError
        An unknown detection name.

    Examples
    --------
    >>> MigrationOptions(zero_page_detection="legacy").zero_page_detection
    <ZeroPageDetection.LEGACY: 'legacy'>
    """

    zero_page_detection: ZeroPageDetection = ZeroPageDetection.MULTIFD
    postcopy_ram: bool = False
    release_ram: bool = False

    def __post_init__(self) -> None:
        mode = self.zero_page_detection
        if not isinstance(mode, (ZeroPageDetection, str)):
            raise TypeError(
                "zero_page_detection must be a ZeroPageDetection or one of "
                f"'none', 'legacy', 'multifd', not {type(mode).__name__}"
            )
        try:
            mode = ZeroPageDetection(mode)
        except ValueError:
            raise ValueError(
                f"zero_page_detection must be 'none', 'legacy' or 'multifd', not {mode!r}"
            ) from None
        object.__setattr__(self, "zero_page_detection", mode)
        for name in ("postcopy_ram", "release_ram"):
            check_bool(name, getattr(self, name))
