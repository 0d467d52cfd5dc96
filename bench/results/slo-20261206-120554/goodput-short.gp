set terminal png size 1000,620 noenhanced
set output 'bench/results/slo-20261206-120554/goodput-short.png'
set title 'Goodput vs offered load, workload short, SLO ttft:1000,tpot:15'
set xlabel 'offered rate (req/s)'
set ylabel 'good req/s (both SLOs met)'
set grid
set key top left
set yrange [0:*]
set arrow from 5.71,graph 0 to 5.71,graph 1 nohead dt 2 lc rgb 'gray'
plot 'bench/results/slo-20261206-120554/short-reject.dat' using 1:2 with linespoints lw 2 title 'tandemd reject (default)', 'bench/results/slo-20261206-120554/short-disagg.dat' using 1:2 with linespoints lw 2 title 'tandemd reject, disaggregated', 'bench/results/slo-20261206-120554/short-cluster.dat' using 1:2 with linespoints lw 2 title 'tandemd reject, cluster (router + 2 workers)', 'bench/results/slo-20261206-120554/short-llama.dat' using 1:2 with linespoints lw 2 title 'llama-server'
