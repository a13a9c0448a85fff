from ngp.cli import main

main()
