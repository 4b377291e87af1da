"""The registry, read for the API in a child process.

MLflow and the database layer under it take about 100 MB of resident memory once imported and
configured, and a serving process would keep them for good: modules are never unloaded. So the
API asks a short-lived child (``python -m retailrec.serving.fetch``) for what it serves: the
child resolves the version, checks the gate's approval and the bundle's checksum
(:func:`retailrec.registry.fetch_approved`) and downloads the files into a folder the API gave
it. The API then loads the files itself.

The settings go to the child pickled on its standard input (the parent trusts its own child);
the answer comes back as one line of JSON on its standard output (the child's own output, and
MLflow's, go to standard error, the API's log). A RetailRec error in the child comes back as
the same error.
"""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
from pathlib import Path

from retailrec.config import Settings
from retailrec.errors import BundleError, NoChampionError, RegistryError, RetailRecError

#: The errors a child reports by name; any other failure is a RegistryError.
_ERRORS: dict[str, type[RetailRecError]] = {
    e.__name__: e for e in (NoChampionError, RegistryError, BundleError)
}
#: A registry that has not answered by then is not going to.
TIMEOUT_S = 600


def fetch(settings: Settings, version: str | None, dest: Path) -> tuple[str, Path, str]:
    """``version`` (default: the champion), approved and checksummed, downloaded into ``dest``
    by a child process: ``(version, bundle folder, checksum)``.

    Raises:
        NoChampionError: no champion; RegistryError: not approved, or the registry failed;
        BundleError: the files changed since registration.
    """
    command = [sys.executable, "-m", "retailrec.serving.fetch", str(dest)]
    if version is not None:
        command.append(version)
    try:
        done = subprocess.run(
            command,
            input=pickle.dumps(settings),
            stdout=subprocess.PIPE,
            check=False,
            timeout=TIMEOUT_S,
        )
    except subprocess.TimeoutExpired:
        raise RegistryError(f"the registry did not answer within {TIMEOUT_S} s") from None
    lines = done.stdout.decode(errors="replace").strip().splitlines()
    try:
        answer = json.loads(lines[-1])
    except (IndexError, ValueError):
        raise RegistryError(
            f"the registry's process exited with {done.returncode} and no answer (its output is"
            " in the log above)"
        ) from None
    if "error" in answer:
        raise _ERRORS.get(answer["error"], RegistryError)(answer["message"])
    return str(answer["version"]), Path(answer["path"]), str(answer["digest"])


def _main(argv: list[str]) -> int:
    """The child: ``DEST [VERSION]``, the settings pickled on standard input."""
    from retailrec import registry  # MLflow: here, never in the API's process

    settings = pickle.loads(sys.stdin.buffer.read())  # our own parent wrote it
    answer, sys.stdout = sys.stdout, sys.stderr  # any other output goes to the log
    try:
        version, path, digest = registry.fetch_approved(
            settings, argv[1] if len(argv) > 1 else None, Path(argv[0])
        )
    except RetailRecError as exc:
        answer.write(json.dumps({"error": type(exc).__name__, "message": str(exc)}) + "\n")
        return 1
    answer.write(json.dumps({"version": version, "path": str(path), "digest": digest}) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
