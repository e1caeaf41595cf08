"""`RunDir`: one trial's run directory, the single owner of its status and of what re-running
it does.

Status lives in `status.json` (`status`, `attempts`, `error`, `updated`, and `step`/
`total_steps` once training ran) and, for a finished trial, in `summary.json`, which is the
truth: a trial with a summary is finished whatever status.json says. The statuses:

- `pending`: no status yet; `running`: an attempt started (attempts + 1);
- `done`, `diverged`, `stopped_early` (FINISHED): summary.json written; never trained again;
- `failed`: an error was recorded; skipped unless the failed trials are retried;
- `interrupted`: a signal stopped it after a checkpoint; re-running resumes it.

A `running` status that no live process holds (no lock) is shown as `interrupted`: its process
died, and re-running resumes it from its latest checkpoint.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from scalinglab import runfiles as rf
from scalinglab.config import TrialConfig, dump_trial
from scalinglab.errors import DiskFullError, RunDirError, TrialError
from scalinglab.identity import identity_dump

FINISHED = ("done", "diverged", "stopped_early")
STATUSES = ("pending", "running", "failed", "interrupted", *FINISHED)


class RunDir:
    """A trial's run directory: its files, its status transitions and its skip rule."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    def __fspath__(self) -> str:
        return str(self.path)

    # Files.
    @property
    def config(self) -> Path:
        return self.path / rf.CONFIG

    @property
    def metrics(self) -> Path:
        return self.path / rf.METRICS

    @property
    def checkpoints(self) -> Path:
        return self.path / rf.CHECKPOINTS

    def summary(self) -> dict[str, Any] | None:
        """summary.json, or None while the trial is not finished."""
        return rf.read_json(self.path / rf.SUMMARY)

    def status_record(self) -> dict[str, Any]:
        """status.json as written ({} before the first attempt)."""
        return rf.read_json(self.path / rf.STATUS) or {}

    def status(self) -> str:
        """The trial's status: the summary's when finished, else status.json's, else pending."""
        summary = self.summary()
        if summary is not None:
            return summary["status"]
        return self.status_record().get("status", "pending")

    # What re-running does.
    def skip(self, retry_failed: bool = False) -> dict[str, Any] | None:
        """None when a run should train (or resume) this trial; otherwise why not, as
        `{"status", "summary"}` for a finished trial or `{"status": "failed", "error"}` for a
        failed one that is not retried."""
        summary = self.summary()
        if summary is not None:
            return {"status": summary["status"], "summary": summary}
        status = self.status_record()
        if status.get("status") == "failed" and not retry_failed:
            return {"status": "failed", "error": status.get("error")}
        return None

    # Transitions.
    def prepare(self, cfg: TrialConfig) -> None:
        """Create the directory and write config.yaml; refuse a directory of another trial
        (one whose config differs in more than trackers and cadence: see `identity_dump`)."""
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise RunDirError(f"{self.path}: cannot create run directory ({e.strerror})") from None
        text = dump_trial(cfg)
        if self.config.exists():
            old = self.config.read_text()
            if old != text and not _same_results(old, cfg):
                raise TrialError(
                    f"{self.path}: holds a different trial's config.yaml; choose another --out "
                    "directory"
                )
        rf.atomic_write_text(self.config, text)

    def start(self) -> None:
        """An attempt begins: `running`, one more attempt."""
        old = self.status_record()
        self._write({"status": "running", "attempts": old.get("attempts", 0) + 1, "error": None})

    def set_status(self, status: str, **extra: Any) -> None:
        """Record `status` (with `error`, `step`, `total_steps`, ...), keeping the attempts."""
        if status not in STATUSES:
            raise ValueError(f"unknown run status {status!r}; allowed: {', '.join(STATUSES)}")
        attempts = self.status_record().get("attempts", 0)
        self._write({"status": status, "attempts": attempts, "error": None, **extra})

    def fail(self, error: BaseException) -> None:
        """The attempt raised: `failed` with the error's type and first line."""
        msg = str(error).splitlines()[0] if str(error) else type(error).__name__
        self.set_status("failed", error=f"{type(error).__name__}: {msg}")

    def finish(self, summary: dict[str, Any], total_steps: int) -> None:
        """Training ended (done, diverged or stopped early): status, then summary.json."""
        self.set_status(
            summary["status"],
            step=summary["steps"],
            total_steps=total_steps,
            error=summary["diverged"],
        )
        rf.write_json(self.path / rf.SUMMARY, summary)

    def mark_interrupted(self, why: str) -> None:
        """A worker stopped outside the loop's own handler: `interrupted`, best effort (the
        other fields are kept; a directory that cannot be written is left as it is)."""
        try:
            old = self.status_record()
            rf.write_json(
                self.path / rf.STATUS,
                {**old, "status": "interrupted", "error": why, "updated": time.time()},
            )
        except OSError:
            pass

    def _write(self, record: dict[str, Any]) -> None:
        record = {**record, "updated": time.time()}
        try:
            rf.write_json(self.path / rf.STATUS, record)
        except DiskFullError:
            # No room for a temp file: reuse status.json's own block, so the status still
            # says what happened (e.g. "failed: ... no space left on device").
            if not (self.path / rf.STATUS).exists():
                raise
            rf.overwrite_in_place(self.path / rf.STATUS, rf.dumps(record) + "\n")


def shown_status(status: str, error: str | None, holder: dict[str, Any] | None) -> tuple[str, str]:
    """(status, note) for `sweep status`: a live lock holder means running; `running` without
    one means its process died (interrupted, resumable)."""
    note = str(error or "") if status != "done" else ""
    if status in ("running", "pending"):
        if holder is not None:
            return "running", f"{holder.get('host')}:{holder.get('pid')}"
        if status == "running":
            return "interrupted", "no live process holds it; re-run to resume"
    return status, note


def _same_results(config_text: str, cfg: TrialConfig) -> bool:
    """Whether a config.yaml describes the same trial as `cfg` (equal `identity_dump`)."""
    import yaml

    try:
        old = TrialConfig.model_validate(yaml.safe_load(config_text))
    except (ValueError, TypeError, yaml.YAMLError):
        return False
    return identity_dump(old) == identity_dump(cfg)
