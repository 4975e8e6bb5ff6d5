"""One --help format for every entry point: the description as written, and each flag's real default.

argparse's ArgumentDefaultsHelpFormatter prints "(default: None)" for flags without one and "(default: True)" for
switches such as --no-progress, whose default is the opposite of what the switch does. Here a default is shown
only for flags that take a value and have one (an empty list is none), and never twice (help that already states
its default keeps it).
"""
import argparse


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    def _get_help_string(self, action):
        text = action.help or ""
        if action.nargs == 0 or action.default in (None, argparse.SUPPRESS, []) or "default" in text:
            return text
        return f"{text} (default: %(default)s)"
