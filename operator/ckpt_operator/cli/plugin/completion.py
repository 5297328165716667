"""``kubectl_complete-ckpt``: completion of ``kubectl ckpt …`` inside kubectl's own completion.

kubectl (1.26+) completes a plugin's arguments by running ``kubectl_complete-<plugin> __complete
ARGS… WORD`` and reading cobra's protocol: one candidate per line, then ``:<directive>``. This
asks ``kubectl-ckpt``'s own (bash) completion, so the candidates are the ones
``kubectl-ckpt --install-completion`` gives a shell, names from the cluster included.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import sys

from ckpt_operator.cli.plugin.commands import app

PROG = "kubectl-ckpt"
NO_FILE_COMPLETION = 4
"""cobra's ShellCompDirectiveNoFileComp: offer no file names when nothing matches."""


def main() -> None:
    words = sys.argv[2:] if sys.argv[1:2] == ["__complete"] else sys.argv[1:]
    os.environ.update(
        COMP_WORDS=shlex.join([PROG, *words]),
        COMP_CWORD=str(len(words)),
        _KUBECTL_CKPT_COMPLETE="complete_bash",
    )
    with contextlib.suppress(SystemExit):
        app(prog_name=PROG)
    print(f":{NO_FILE_COMPLETION}")
