"""`fairbench data download`: a dataset's files from its Hugging Face dataset repository into a folder fairbench
reads, through `huggingface_hub` (optional extra `download`).

The library does the fetching: files land in its cache ($HF_HOME / $HF_HUB_CACHE), a file finished once is not
fetched again (a rerun after an interruption fetches only what is missing), it shows progress bars, reads
$HF_TOKEN (or a `hf auth login` token) and honours offline mode ($HF_HUB_OFFLINE=1: the cache only). fairbench then
lays the snapshot out (the folder holding the card's `root_file`; .zip archives unpacked, members that would leave
the folder refused) in a hidden folder beside the target and renames it into place, so the target is never
half-written: an error before the rename leaves it as it was. A marker file records the repository commit, so a
rerun on the same commit changes nothing.
"""

from __future__ import annotations

import json
import shutil
import zipfile
from dataclasses import dataclass
from pathlib import Path

from fairbench.datasets.card import HubSource
from fairbench.datasets.errors import DatasetError

MARKER = ".fairbench-download.json"


class DownloadError(DatasetError):
    """The download failed or cannot start; one line naming the repository (or folder) and the fix."""


@dataclass
class Downloaded:
    path: Path
    commit: str
    n_files: int
    unchanged: bool  # the folder already held this commit: nothing was written


def snapshot(source: HubSource, cache_dir: Path | None = None) -> Path:
    """The repository snapshot in the Hugging Face cache (downloaded or completed first unless offline)."""
    try:
        from huggingface_hub import errors as hub_errors
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import (
            GatedRepoError,
            HfHubHTTPError,
            LocalEntryNotFoundError,
            RepositoryNotFoundError,
            RevisionNotFoundError,
        )
    except ImportError:
        raise DownloadError("`fairbench data download` needs huggingface_hub: pip install "
                            "'fairbench-medvlm[download]'") from None
    repo = source.repo_id
    try:
        return Path(snapshot_download(repo, repo_type="dataset", revision=source.revision,
                                      allow_patterns=list(source.include) or None,
                                      cache_dir=str(cache_dir) if cache_dir else None))
    except GatedRepoError:
        raise DownloadError(f"{repo}: gated dataset repository; request access at {source.page} (log in and accept "
                            "its conditions), then set HF_TOKEN (or run `hf auth login`) and run this again") from None
    except RevisionNotFoundError:
        raise DownloadError(f"{repo}: no revision {source.revision!r}; pass an existing branch, tag or commit "
                            "with --revision") from None
    except RepositoryNotFoundError:
        raise DownloadError(f"{repo}: dataset repository not found, or not visible without a token; check the id "
                            f"(--repo), request access at {source.page} and set HF_TOKEN") from None
    except LocalEntryNotFoundError as exc:
        incomplete = getattr(hub_errors, "IncompleteSnapshotError", None)  # huggingface_hub >= 1
        if incomplete is not None and isinstance(exc, incomplete):
            raise DownloadError(f"{repo}: the Hugging Face cache holds an incomplete snapshot and the Hub is not "
                                "reachable; go online (unset HF_HUB_OFFLINE) to fetch the missing files") from None
        raise DownloadError(f"{repo}: not in the Hugging Face cache, and the Hub is not reachable (offline mode "
                            "HF_HUB_OFFLINE=1, or no network); go online, or point HF_HOME at a cache that holds "
                            "it") from None
    except HfHubHTTPError as exc:
        first = (str(exc).strip().splitlines() or [""])[0]
        raise DownloadError(f"{repo}: the Hub refused the download ({first}); try again later") from None


def _dataset_root(tree: Path, root_file: str) -> Path:
    """The folder holding `root_file`: the top, or one folder down."""
    if not root_file or (tree / root_file).is_file():
        return tree
    found = sorted(p.parent for p in tree.glob(f"*/{root_file}") if p.is_file())
    if len(found) != 1:
        what = "no folder" if not found else f"{len(found)} folders"
        raise DownloadError(f"{tree}: {what} of the download hold {root_file} at the top or one folder down; pass "
                            "the dataset's layout with --root-file, or lay the files out by hand")
    return found[0]


def _extract(archive: Path) -> None:
    """Unpack a .zip beside itself, then remove it; members with absolute paths or '..' are refused."""
    try:
        with zipfile.ZipFile(archive) as zf:
            for member in zf.namelist():
                parts = Path(member).parts
                if Path(member).is_absolute() or ".." in parts:
                    raise DownloadError(f"{archive.name}: member {member!r} would leave the folder; not unpacked")
            zf.extractall(archive.parent)
    except (zipfile.BadZipFile, OSError) as exc:
        raise DownloadError(f"{archive.name}: unreadable zip archive ({exc}); delete it from the Hugging Face "
                            "cache and download again") from None
    archive.unlink()


def _previous_commit(to: Path, source: HubSource) -> str | None:
    try:
        marker = json.loads((to / MARKER).read_text())
    except (OSError, ValueError):
        return None
    if marker.get("repo") != source.repo_id or marker.get("include") != list(source.include):
        return None
    return marker.get("commit")


def download(source: HubSource, to: Path, cache_dir: Path | None = None) -> Downloaded:
    """Fetch `source` and lay it out in `to` (a new or empty folder, or an earlier download of the same repository);
    DownloadError on any problem, with `to` left as it was."""
    from fairbench.files import new_temp_dir, remove_tree

    to = Path(to).expanduser().absolute()
    if to.exists() and not to.is_dir():
        raise DownloadError(f"{to}: exists and is not a folder; choose another --to")
    previous = _previous_commit(to, source) if to.is_dir() else None
    if to.is_dir() and any(to.iterdir()) and previous is None:
        raise DownloadError(f"{to}: folder is not empty and holds no download of {source.repo_id}; choose a new or "
                            "empty folder")
    tree = snapshot(source, cache_dir)
    commit = tree.name
    if previous == commit:
        return Downloaded(to, commit, sum(1 for p in to.rglob("*") if p.is_file() and p.name != MARKER), True)
    stage = new_temp_dir(to)
    try:
        for path in sorted(tree.rglob("*")):
            if path.is_file():
                target = stage / path.relative_to(tree)
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, target)  # follows the cache's symlinks to the blobs
        if source.extract:
            for archive in sorted(stage.rglob("*.zip")):
                _extract(archive)
        root = _dataset_root(stage, source.root_file)
        files = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())
        (root / MARKER).write_text(json.dumps({"repo": source.repo_id, "revision": source.revision,
                                               "commit": commit, "include": list(source.include),
                                               "files": files}, indent=2) + "\n")
        old = None
        if to.exists():
            old = new_temp_dir(to)
            old.rmdir()
            to.rename(old)
        to.parent.mkdir(parents=True, exist_ok=True)
        try:
            root.rename(to)
        except OSError:
            if old is not None:
                old.rename(to)  # the earlier download back in place
            raise
        if old is not None:
            remove_tree(old)
    finally:
        remove_tree(stage)
    return Downloaded(to, commit, len(files), False)
