set terminal png size 1000,620 noenhanced
set output 'bench/results/slo-20261206-120554/scale-short.png'
set title 'SLO attainment vs SLO scale, workload short, 4 req/s, SLO at 1x ttft:1000,tpot:15'
set xlabel 'SLO scale (x the workload SLO; smaller is tighter)'
set ylabel 'SLO attainment, both SLOs (%)'
set grid
set key bottom right
set yrange [0:105]
set arrow from 1,graph 0 to 1,graph 1 nohead dt 2 lc rgb 'gray'
plot 'bench/results/slo-20261206-120554/short-reject-scale.dat' using 1:($2*100) with linespoints lw 2 title 'tandemd reject (default)', 'bench/results/slo-20261206-120554/short-disagg-scale.dat' using 1:($2*100) with linespoints lw 2 title 'tandemd reject, disaggregated', 'bench/results/slo-20261206-120554/short-cluster-scale.dat' using 1:($2*100) with linespoints lw 2 title 'tandemd reject, cluster (router + 2 workers)', 'bench/results/slo-20261206-120554/short-llama-scale.dat' using 1:($2*100) with linespoints lw 2 title 'llama-server', 90 with lines dt 2 lw 2 lc rgb 'black' title '90% target'
