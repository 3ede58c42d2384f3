"""Constraints that live on modules (parametrizations) and modelzip's replacement modules."""
