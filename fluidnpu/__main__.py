"""``python -m fluidnpu``: the same as the ``fluidnpu`` command."""
from fluidnpu.cli import main

main(prog_name="fluidnpu")
