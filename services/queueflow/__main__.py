from queueflow.cli import main

raise SystemExit(main())
