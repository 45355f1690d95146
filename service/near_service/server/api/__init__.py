"""HTTP routes of the selection service, one module per router; ``main.routers`` lists them."""
