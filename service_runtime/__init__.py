"""What both gRPC services share: configuration, database engines, auth, errors, serving, tracing.

Each module is named for its one job; nothing here knows about jobs or Google.
"""
