"""Adversarial tests: one per hole an attacker with partial access found (issue 14), each failing
before its fix. Real processes on 127.0.0.1 where the attack needs them."""
