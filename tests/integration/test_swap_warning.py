"""Where tmpfs can be swapped: a rendered file on tmpfs is RAM only while no swap is on, and the agent
says so (render's secrets_may_reach_swap warning, doctor's runtime folder line) when one is."""

from __future__ import annotations

from pathlib import Path

from agent.host.output import active_swaps, swappable_swaps

HEADER = "Filename\t\t\t\tType\t\tSize\t\tUsed\t\tPriority\n"


def proc_swaps(tmp_path: Path, *areas: str) -> Path:
    """A /proc/swaps as the kernel writes it, with these swap areas in use."""
    path = tmp_path / "swaps"
    path.write_text(HEADER + "".join(f"{area}\tpartition\t1048572\t\t0\t\t-2\n" for area in areas))
    return path


def test_a_tmpfs_folder_with_swap_on_names_the_swap_areas(tmpfs_path: Path, tmp_path: Path) -> None:
    """tmpfs and two swap areas in use: both are named."""
    swaps = proc_swaps(tmp_path, "/dev/xvdb", "/swapfile")
    assert swappable_swaps(tmpfs_path, swaps) == ["/dev/xvdb", "/swapfile"]


def test_no_swap_means_nothing_to_say(tmpfs_path: Path, tmp_path: Path) -> None:
    """tmpfs with no swap on (the header alone, as on EC2's images): nothing."""
    assert swappable_swaps(tmpfs_path, proc_swaps(tmp_path)) == []
    assert active_swaps(tmp_path / "absent") == []


def test_a_disk_folder_is_not_tmpfs_so_not_this_warning(tmp_path: Path) -> None:
    """A folder on disk (allow_persistent's case, refused otherwise) is not what this check is about."""
    disk = Path(__file__).resolve().parent  # the checkout, on disk
    assert swappable_swaps(disk, proc_swaps(tmp_path, "/dev/xvdb")) == []
