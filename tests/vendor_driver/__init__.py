"""A test-only third-party driver ("vendor") with its own die physics, registered through a real
``cimcal.drivers`` entry point by :mod:`tests.vendor_driver.plugin` (nothing installed globally)."""
