"""Great Expectations suites as code, one per data contract (item catalog, codes), and their runner."""

from validation.result import ValidationError, ValidationResult, raise_for_failure
from validation.runner import validate_catalog, validate_codes

__all__ = ["ValidationError", "ValidationResult", "raise_for_failure", "validate_catalog", "validate_codes"]
