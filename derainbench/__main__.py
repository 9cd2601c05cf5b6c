from derainbench.cli import main

raise SystemExit(main())
