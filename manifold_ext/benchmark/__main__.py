from manifold_ext.benchmark import main

main()
