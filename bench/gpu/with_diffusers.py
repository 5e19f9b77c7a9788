"""Run a Python script that imports diffusers on the GPU machine, whose
PyTorch venv has an older huggingface_hub than the diffusers wheel we send
expects. Diffusion models and schedulers built from local files never call
the Hub, so each Hub name the import asks for and cannot find is stood in
for (an exception class, a constant or a function that refuses), then the
script runs as `__main__`.

    python with_diffusers.py SCRIPT [ARGS...]
"""

import importlib
import re
import runpy
import sys

MISSING = re.compile(r"cannot import name '(\w+)' from '(huggingface_hub[\w.]*)'")


def stand_in(name):
    if name.endswith(("Error", "Exception")):
        return type(name, (Exception,), {})
    if name.isupper():
        return None

    def refuse(*_args, **_kwargs):
        raise RuntimeError(f"huggingface_hub.{name} is not available on this machine")

    return refuse


def import_diffusers():
    for _ in range(50):
        try:
            import diffusers  # noqa: F401
            return
        except ImportError as e:
            found = MISSING.search(str(e))
            if not found:
                raise
            name, module = found.groups()
            print(f"with_diffusers: standing in for {module}.{name}", file=sys.stderr)
            setattr(importlib.import_module(module), name, stand_in(name))
            for loaded in [m for m in sys.modules if m == "diffusers" or m.startswith("diffusers.")]:
                del sys.modules[loaded]
    raise SystemExit("with_diffusers: too many missing huggingface_hub names")


if __name__ == "__main__":
    import_diffusers()
    script = sys.argv[1]
    sys.argv = sys.argv[1:]
    runpy.run_path(script, run_name="__main__")
