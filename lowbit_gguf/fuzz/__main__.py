"""`python -m lowbit_gguf.fuzz`: tools/fuzz-gguf's command line (the sanitized runs re-execute through it)."""

import sys

from lowbit_gguf.fuzz.runner import main

sys.exit(main())
