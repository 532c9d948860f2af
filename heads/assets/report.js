(function(){
var D=window.EXPLORER, n=D.username.length, cols=["username","category","probability","followers","tier","posts",
"engagement","sponsored","release","agree","split","similar"], num={probability:1,followers:1,posts:1,engagement:1,
sponsored:1,agree:1};
var state={sort:"probability",dir:-1,page:0,size:50,like:-1}, order=[];
function q(id){return document.getElementById(id);}
function fmt(c,v){if(v===null||v===undefined||v==="")return"";if(c==="agree")return v<0?"":(v?'<span class="yes">yes</span>':'<span class="no">no</span>');
if(c==="followers"||c==="posts")return v<0?"":Number(v).toLocaleString();if(c==="engagement")return(100*v).toFixed(2)+"%";
if(c==="sponsored")return(100*v).toFixed(0)+"%";
if(c==="probability")return v.toFixed(3);return String(v).replace(/[&<>]/g,function(s){return{"&":"&amp;","<":"&lt;",">":"&gt;"}[s];});}
function cell(c,i){if(c==="similar")return D.similar[i].length?'<button class="like" data-row="'+i+'">similar</button>':"";
return fmt(c,D[c][i]);}
function apply(){if(state.like>=0){order=D.similar[state.like].slice();state.page=0;render();return;}
var cat=q("ex-cat").value,tier=q("ex-tier").value,ag=q("ex-agree").value,s=q("ex-search").value.toLowerCase();
order=[];for(var i=0;i<n;i++){if(cat&&D.category[i]!==cat)continue;if(tier&&D.tier[i]!==tier)continue;
if(ag!==""&&String(D.agree[i])!==ag)continue;if(s&&D.username[i].toLowerCase().indexOf(s)<0)continue;order.push(i);}
var c=state.sort,d=state.dir,col=D[c];order.sort(function(a,b){var x=col[a],y=col[b];
if(x===null||x==="")return 1;if(y===null||y==="")return -1;return x<y?-d:x>y?d:a-b;});state.page=0;render();}
function render(){var pages=Math.max(1,Math.ceil(order.length/state.size));state.page=Math.min(state.page,pages-1);
var rows=[],s=state.page*state.size;for(var k=s;k<Math.min(s+state.size,order.length);k++){var i=order[k];
rows.push("<tr>"+cols.map(function(c){return'<td class="'+(num[c]?"num":"")+'">'+cell(c,i)+"</td>";}).join("")+"</tr>");}
q("ex-body").innerHTML=rows.join("");q("ex-info").textContent=(state.like>=0?"the "+order.length+" nearest lookalikes of "+
D.username[state.like]+" (most similar first; any control shows every influencer again)":order.length.toLocaleString()+
" of "+n.toLocaleString()+" influencers")+"; page "+(state.page+1)+" of "+pages;
q("ex-body").querySelectorAll("button.like").forEach(function(b){b.onclick=function(){state.like=Number(b.dataset.row);
apply();};});}
function reset(){state.like=-1;apply();}
document.querySelectorAll("#ex-table th").forEach(function(th){th.onclick=function(){var c=th.dataset.col;
state.dir=state.sort===c?-state.dir:(num[c]?-1:1);state.sort=c;reset();};});
["ex-cat","ex-tier","ex-agree"].forEach(function(id){q(id).onchange=reset;});q("ex-search").oninput=reset;
q("ex-prev").onclick=function(){if(state.page>0){state.page--;render();}};
q("ex-next").onclick=function(){state.page++;render();};apply();})();
