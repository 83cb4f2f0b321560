"""voicekit's web page and HTTP API in one server: `python app.py [--preset gpu] [--host H] [--port P]`.

The same as `python -m voicekit serve` (voicekit/serve/app.py); kept as the README's one-line start.
"""

import sys

from voicekit.cli import main

if __name__ == "__main__":
    sys.exit(main(["serve", *sys.argv[1:]]))
