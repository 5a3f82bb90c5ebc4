from ehrnet_jax.cli import main

raise SystemExit(main())
