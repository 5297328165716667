"""The API: resource schemas (the one source of the CRDs), the names of the contract, conditions."""
