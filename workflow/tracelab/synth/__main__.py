from tracelab.synth.wireshark_export import main

raise SystemExit(main())
