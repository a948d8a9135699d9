"""Shared command-line plumbing: flag parsing whose user errors print one line and exit 2."""

from __future__ import annotations

import logging
import re
import sys
from typing import Callable

from absl import app, flags
from absl import logging as absl_logging

_ERROR_LINE = re.compile(r"^\s*(?:\w+\.)*(\w+(?:Error|Exception)): (.*)$")


def _clean(message: str) -> str:
    """The last 'SomeError: text' line of a message that may embed a traceback (ml_collections
    wraps errors raised inside get_config that way); the message itself when there is none."""
    hits = [m.group(2) for m in map(_ERROR_LINE.match, message.splitlines()) if m]
    return hits[-1] if hits else message.strip().splitlines()[0]


def parse_flags(argv: list[str]) -> list[str]:
    """flags.FLAGS(argv), with every parse or config-loading failure as one line on stderr, exit 2."""
    try:
        rest = flags.FLAGS(argv)
        if "config" in flags.FLAGS and flags.FLAGS["config"].present:
            flags.FLAGS.config.keys()  # ml_collections loads lazily: surface a bad --config path now
        return rest
    except (AttributeError, KeyError) as e:  # an override of a field the config does not have
        overrides = [a for a in argv[1:] if a.startswith("--config.")]
        name = str(e).strip("\"'")
        print(f"error: unknown config field {name!r} in {' '.join(overrides)}; configs/base.py lists every field", file=sys.stderr)
    except OSError as e:  # --config names a file that cannot be read
        reason = str(e).strip().splitlines()[-1].strip()
        print(f"error: cannot load the file given by --config: {reason}", file=sys.stderr)
    except Exception as e:  # noqa: BLE001 - anything raised while reading flags and config files is the user's to fix
        print(f"error: {_clean(str(e))}", file=sys.stderr)
    sys.exit(2)


def run_main(main: Callable[[list[str]], None]) -> None:
    """app.run with quiet logging (absl INFO chatter from jax and orbax drowns the progress lines;
    --verbosity=0 brings it back) and clean flag errors."""

    def quiet_main(argv: list[str]) -> None:
        if not flags.FLAGS["verbosity"].present:
            absl_logging.set_verbosity(absl_logging.WARNING)
        main(argv)

    logging.getLogger("jax._src.xla_bridge").setLevel(logging.WARNING)  # 'Unable to initialize backend tpu'
    app.run(quiet_main, flags_parser=parse_flags)
