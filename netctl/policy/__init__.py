"""The policy language: load and validate, the reference evaluator, the compiler.

Nothing in this package imports bcc or pyroute2 or needs root: it is pure logic.
"""
