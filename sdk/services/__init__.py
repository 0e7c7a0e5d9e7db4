"""The service framework (`tessera services`): long-running apps kept running, healthy and rolled out,
Marathon-style, written only against the public SDK. Pure parts: the app definition (`app`), placement
constraints (`constraints`), the deployment planner (`deploy`)."""
