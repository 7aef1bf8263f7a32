from consent_middleware.sidecar import main

main()
