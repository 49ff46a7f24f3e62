#!/usr/bin/env python3
"""Run every command README.md and docs/*.md tell a user to type, as written.

What counts as a documented command:
  - every fenced ```sh block, run as one bash script (`set -euo pipefail`) from
    the repository root; a block whose first line is `# not run: <reason>` is
    skipped and listed with its reason (e.g. it installs into $HOME);
  - every inline `cargo run ...` span in the prose, run as one command.
A command must exit 0, unless the block's (or span's) text ends with a comment
`# exit N`, in which case it must exit N.

Every example under examples/ must appear in at least one documented command,
so an example cannot silently lose its documentation (or its check).

The services the commands need (PostgreSQL, MariaDB, moto) are brought up by
scripts/test.sh before this runs; each block runs in its own process group,
killed afterwards (a block may start moto_server in the background).
"""

import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
TIMEOUT = int(os.environ.get("DOC_COMMAND_TIMEOUT", "1200"))
# DOC_COMMANDS_ONLY=README.md:295 runs only the commands whose location
# (file:line) contains that text (the example coverage check still runs).
ONLY = os.environ.get("DOC_COMMANDS_ONLY", "")

FENCE = re.compile(r"^```(\w*)\s*$")
INLINE = re.compile(r"`((?:[A-Z_]+=\S+ +)*cargo run [^`]+)`")
EXIT = re.compile(r"#\s*exit\s+(\d+)\b")


def commands():
    out = []
    for doc in DOCS:
        lines = doc.read_text().splitlines()
        i = 0
        while i < len(lines):
            m = FENCE.match(lines[i])
            if m:
                lang, start = m.group(1), i + 1
                j = start
                while j < len(lines) and not lines[j].startswith("```"):
                    j += 1
                body = lines[start:j]
                if lang == "sh" and body:
                    out.append((doc, start + 1, "\n".join(body)))
                i = j + 1
                continue
            for span in INLINE.findall(lines[i]):
                out.append((doc, i + 1, span))
            i += 1
    # The same inline command documented twice runs once.
    seen, unique = set(), []
    for doc, line, text in out:
        if text not in seen:
            seen.add(text)
            unique.append((doc, line, text))
    return unique


def expected_exit(text):
    last = text.strip().splitlines()[-1]
    m = EXIT.search(last)
    return int(m.group(1)) if m else 0


def run(text):
    script = "set -euo pipefail\n" + text + "\n"
    started = time.monotonic()
    # Output goes to a file, not a pipe: a block may leave a background process
    # (moto_server) holding its stdout open, and the block is done when bash
    # exits, not when every descendant closed the pipe.
    with tempfile.TemporaryFile() as out:
        proc = subprocess.Popen(
            ["bash", "-c", script],
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            code = proc.wait(timeout=TIMEOUT)
            timed_out = False
        except subprocess.TimeoutExpired:
            code, timed_out = -1, True
        finally:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()
        out.seek(0)
        output = out.read().decode(errors="replace")
    if timed_out:
        output += f"\n(timed out after {TIMEOUT}s)"
    return code, output, time.monotonic() - started


def main():
    cmds = commands()
    failures, skipped = [], []
    documented = " ".join(text for _, _, text in cmds)
    for ex in sorted((ROOT / "examples").glob("*.rs")):
        if f"--example {ex.stem}" not in documented:
            failures.append(f"examples/{ex.name}: no documented command runs it")
    for doc, line, text in cmds:
        where = f"{doc.relative_to(ROOT)}:{line}"
        if ONLY and ONLY not in where:
            continue
        first = text.strip().splitlines()[0]
        if first.startswith("# not run:"):
            skipped.append(f"{where}: {first[len('# not run:'):].strip()}")
            continue
        want = expected_exit(text)
        more = " ..." if len(text.strip().splitlines()) > 1 else ""
        print(f"--- {where}: {first}{more}", flush=True)
        code, output, secs = run(text)
        print(f"    exit {code} (want {want}) in {secs:.0f}s", flush=True)
        if code != want:
            tail = "\n".join(output.splitlines()[-25:])
            failures.append(f"{where}: exit {code}, want {want}\n{tail}")
    for s in skipped:
        print(f"skipped (not run): {s}")
    if failures:
        print(f"\n{len(failures)} documented command(s) broken:", file=sys.stderr)
        for f in failures:
            print(f"\n* {f}", file=sys.stderr)
        return 1
    print(f"all {len(cmds) - len(skipped)} documented commands ran as written" + (f" (only {ONLY})" if ONLY else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
