set terminal png size 900,600 noenhanced
set grid
set key bottom right
set output 'ttft_cdf.png'
set title 'TTFT CDF'
set xlabel 'TTFT (ms)'
set ylabel 'fraction of requests'
unset arrow
set arrow from 2000.000, graph 0 to 2000.000, graph 1 nohead dt 2
plot 'ttft_0.dat' using 1:2 with lines lw 2 title '4 req/s'
set output 'tpot_cdf.png'
set title 'TPOT CDF'
set xlabel 'TPOT (ms)'
set ylabel 'fraction of requests'
unset arrow
set arrow from 30.000, graph 0 to 30.000, graph 1 nohead dt 2
plot 'tpot_0.dat' using 1:2 with lines lw 2 title '4 req/s'
