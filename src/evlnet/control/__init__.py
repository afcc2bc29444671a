"""The control endpoint: a stack served on a local Unix socket, and its client.

A layer between the stack (``evlnet``) and the tools (``evlnet.tools``): ``server`` serves a
``Stack`` to other processes of the same user, ``client`` talks to it, ``endpoint`` holds what
both share (where sockets live, the wire format, the limits and the request schema).
See ``docs/TOOLS.md`` for the protocol and its security rules.
"""
