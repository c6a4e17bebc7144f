"""Repositories: one module per aggregate, SQL only. They take a ``Session``, never commit (the
caller's unit of work does), never raise HTTP errors and never touch hardware.
"""
