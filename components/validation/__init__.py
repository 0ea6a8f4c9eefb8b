"""Validation adapter: tier rules as Great Expectations suites, failures mapped to episodes."""

from components.validation.gx_suites import Failure, ValidationReport, validate_tables

__all__ = ["Failure", "ValidationReport", "validate_tables"]
