"""The user API: oob sockets shaped like Python's ``socket`` objects, with EVL's rules."""
