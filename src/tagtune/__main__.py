from tagtune.apps.cli import main

raise SystemExit(main())
