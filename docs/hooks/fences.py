"""mkdocs hook: fence info strings carry test options after the language (``bash slow``,
``python file=train_ddp.py``, see tests/test_docs.py); Python-Markdown reads only a bare
language there, so the options are dropped before rendering."""

import re

_INFO = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})(?P<lang>[\w+-]+)[ \t]+\S[^\n]*$", re.M)


def on_page_markdown(markdown, **kwargs):
    return _INFO.sub(r"\g<indent>\g<fence>\g<lang>", markdown)
