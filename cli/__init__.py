"""The ``rt-decoder`` command line: ``python -m cli`` or the ``rt-decoder`` console script.

``cli.main`` builds the parser (one module per subcommand in ``cli/commands``) and runs
the chosen one; ``cli.flags`` holds the shared flag vocabulary and the deprecated
spellings. Imports flow one way: ``cli`` may import ``rt_decoder``, ``streaming`` and
``bindings``; none of those imports ``cli`` (``tests/test_imports.py`` checks it).
"""
